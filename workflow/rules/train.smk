rule train:
    input:
        unpack(lambda wc: pw.rl_inputs(config, R, wc.model, wc.method)),
    output:
        model=directory(f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/model"),
        history=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/history.json",
    params:
        spec=pw.spec(pw.rl_train_spec(config)),
        source=lambda wc: config["models"][wc.model]["source"],
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        boundary=lambda wc, input: f"--boundary {input.boundary}" if "boundary" in input.keys() else "",
        out_dir=lambda wc, output: os.path.dirname(output.history),
        job=lambda wc: pw.job(config, "train", wc),
        launch=lambda wc, resources: pw.train_launcher(config, resources.get("gpu", 0)),
    threads: pw.threads(config, "train")
    resources:
        **pw.resources(config, "train"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/train/{{model}}-{{method}}-seed{{seed}}.log",
    shell:
        "{params.launch} train --name {wildcards.model} --method {wildcards.method:q}"
        " --seed {wildcards.seed} --model-dir {input.model} --spec {params.spec:q}"
        " {params.data} --source {params.source} {params.boundary}"
        " --out-dir {params.out_dir} --threads {threads} --job {params.job:q} > {log} 2>&1"


rule evaluate_trained:
    input:
        unpack(lambda wc: pw.evaluation_inputs(config, R, wc.model, wc.benchmark)),
        trained=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/model",
    output:
        table=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/eval/{{benchmark}}/samples.parquet",
        summary=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/eval/{{benchmark}}/summary.json",
    params:
        spec=lambda wc: pw.spec(config["evaluation"]["benchmarks"][wc.benchmark]),
        source=lambda wc: config["models"][wc.model]["source"],
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        job=lambda wc: pw.job(config, "evaluate_trained", wc),
    threads: pw.threads(config, "evaluate_trained")
    resources:
        **pw.resources(config, "evaluate_trained"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/evaluate_trained/{{model}}-{{method}}-seed{{seed}}-{{benchmark}}.log",
    shell:
        "python -m pipeline evaluate --name {wildcards.model}+{wildcards.method:q}"
        " --benchmark {wildcards.benchmark} --model-dir {input.trained} --spec {params.spec:q}"
        " {params.data} --source {params.source} --seed {wildcards.seed}"
        " --out-table {output.table} --out-summary {output.summary} --threads {threads}"
        " --job {params.job:q} > {log} 2>&1"
