rule responses:
    input:
        unpack(lambda wc: pw.responses_inputs(config, R, wc.model)),
    output:
        f"{R}/responses/{{model}}/responses.parquet",
    params:
        spec=lambda wc: pw.spec(pw.responses_spec(config, wc.model)),
        source=lambda wc: config["models"][wc.model]["source"],
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        job=lambda wc: pw.job(config, "responses", wc),
    threads: pw.threads(config, "responses")
    resources:
        **pw.resources(config, "responses"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/responses/{{model}}.log",
    shell:
        "python -m pipeline responses --name {wildcards.model} --model-dir {input.model}"
        " --spec {params.spec:q} {params.data} --source {params.source} --seed 0"
        " --out {output} --threads {threads} --job {params.job:q} > {log} 2>&1"
