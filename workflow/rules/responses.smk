C = pw.Common(CFG, "responses", "{model}")


rule responses:
    input:
        unpack(lambda wc: pw.responses_inputs(CFG, R, wc.model)),
    output:
        paths.responses(R),
    params:
        spec=lambda wc: pw.spec(pw.responses_spec(CFG, wc.model)),
        source=lambda wc: CFG.models[wc.model].source,
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline responses --name {wildcards.model} --model-dir {input.model}"
        " --spec {params.spec:q} {params.data} --source {params.source} --seed 0"
        " --out {output} --threads {threads} --job {params.job:q} > {log} 2>&1"
