rule depth:
    input:
        model=f"{R}/models/{{model}}/model",
    output:
        summary=f"{R}/depth/{{model}}/summary.json",
    params:
        spec=pw.spec(config["analysis"]["depth"]),
        countdown=lambda wc: pw.spec(config["tasks"]["countdown"])
        if config["models"][wc.model]["source"] == "builtin"
        else "null",
        out_dir=lambda wc, output: os.path.dirname(output.summary),
        job=lambda wc: pw.job(config, "depth", wc),
    threads: pw.threads(config, "depth")
    resources:
        **pw.resources(config, "depth"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/depth/{{model}}.log",
    shell:
        "python -m pipeline depth --name {wildcards.model} --model-dir {input.model}"
        " --spec {params.spec:q} --countdown {params.countdown:q} --out-dir {params.out_dir}"
        " --threads {threads} --job {params.job:q} > {log} 2>&1"
