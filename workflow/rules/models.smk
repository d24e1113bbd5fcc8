C = pw.Common(CFG, "provision", "{model}")


rule provision:
    input:
        data=lambda wc: pw.provision_inputs(CFG, R, wc.model),
    output:
        model=directory(paths.model_dir(R)),
        summary=paths.provision_summary(R),
    params:
        spec=lambda wc: pw.spec(pw.provision_spec(CFG.models[wc.model])),
        data=lambda wc, input: f"--data {input.data}" if input.data else "",
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline provision --name {wildcards.model} --spec {params.spec:q}"
        " {params.data} --out {output.model} --summary {output.summary}"
        " --threads {threads} --job {params.job:q} > {log} 2>&1"
