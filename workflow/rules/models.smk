rule provision:
    input:
        data=lambda wc: pw.provision_inputs(config, R, wc.model),
    output:
        model=directory(f"{R}/models/{{model}}/model"),
        summary=f"{R}/models/{{model}}/provision.json",
    params:
        spec=lambda wc: pw.spec(config["models"][wc.model]),
        data=lambda wc, input: f"--data {input.data}" if input.data else "",
        job=lambda wc: pw.job(config, "provision", wc),
    threads: pw.threads(config, "provision")
    resources:
        **pw.resources(config, "provision"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/provision/{{model}}.log",
    shell:
        "python -m pipeline provision --name {wildcards.model} --spec {params.spec:q}"
        " {params.data} --out {output.model} --summary {output.summary}"
        " --threads {threads} --job {params.job:q} > {log} 2>&1"
