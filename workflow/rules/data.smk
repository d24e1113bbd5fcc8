rule countdown_data:
    output:
        expand(f"{R}/data/countdown/{{split}}.jsonl", split=config["tasks"]["countdown"]["splits"]),
    params:
        spec=pw.spec(config["tasks"]["countdown"]),
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        job=pw.job(config, "countdown_data"),
    threads: pw.threads(config, "countdown_data")
    resources:
        **pw.resources(config, "countdown_data"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/countdown_data.log",
    shell:
        "python -m pipeline countdown-data --spec {params.spec:q} --out-dir {params.out_dir}"
        " --job {params.job:q} > {log} 2>&1"
