rule evaluate:
    input:
        unpack(lambda wc: pw.evaluation_inputs(config, R, wc.model, wc.benchmark)),
    output:
        table=f"{R}/eval/{{model}}/{{benchmark}}/seed{{seed}}/samples.parquet",
        summary=f"{R}/eval/{{model}}/{{benchmark}}/seed{{seed}}/summary.json",
    params:
        spec=lambda wc: pw.spec(config["evaluation"]["benchmarks"][wc.benchmark]),
        source=lambda wc: config["models"][wc.model]["source"],
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        job=lambda wc: pw.job(config, "evaluate", wc),
    threads: pw.threads(config, "evaluate")
    resources:
        **pw.resources(config, "evaluate"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/evaluate/{{model}}-{{benchmark}}-seed{{seed}}.log",
    shell:
        "python -m pipeline evaluate --name {wildcards.model} --benchmark {wildcards.benchmark}"
        " --model-dir {input.model} --spec {params.spec:q} {params.data}"
        " --source {params.source} --seed {wildcards.seed} --out-table {output.table}"
        " --out-summary {output.summary} --threads {threads} --job {params.job:q} > {log} 2>&1"
