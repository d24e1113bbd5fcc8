rule evaluate_countdown:
    input:
        model=f"{R}/models/{{model}}/model",
        data=f"{R}/data/countdown/{config['evaluation']['countdown']['split']}.jsonl",
    output:
        table=f"{R}/eval/{{model}}/seed{{seed}}/countdown.parquet",
        summary=f"{R}/eval/{{model}}/seed{{seed}}/countdown.json",
    params:
        spec=pw.spec(config["evaluation"]["countdown"]),
        source=lambda wc: config["models"][wc.model]["source"],
        job=lambda wc: pw.job(config, "evaluate_countdown", wc),
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/evaluate_countdown/{{model}}-seed{{seed}}.log",
    shell:
        "python -m pipeline evaluate-countdown --name {wildcards.model}"
        " --model-dir {input.model} --spec {params.spec:q} --data {input.data}"
        " --source {params.source} --seed {wildcards.seed} --out-table {output.table}"
        " --out-summary {output.summary} --threads {threads} --job {params.job:q} > {log} 2>&1"
