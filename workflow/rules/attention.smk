rule attention:
    input:
        model=f"{R}/models/{{model}}/model",
        responses=f"{R}/responses/{{model}}/responses.parquet",
    output:
        tokens=f"{R}/attention/{{model}}/tokens.parquet",
        heads=f"{R}/attention/{{model}}/heads.parquet",
        summary=f"{R}/attention/{{model}}/summary.json",
        figures=report(
            directory(f"{R}/attention/{{model}}/figures"),
            patterns=["{name}.png"],
            caption="../report/attention.rst",
            category="Attention",
            subcategory="{model}",
        ),
    params:
        spec=pw.spec(config["analysis"]["attention"]),
        job=lambda wc: pw.job(config, "attention", wc),
    threads: pw.threads(config, "attention")
    resources:
        **pw.resources(config, "attention"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/attention/{{model}}.log",
    shell:
        "python -m pipeline attention --name {wildcards.model} --model-dir {input.model}"
        " --responses {input.responses} --spec {params.spec:q} --out-tokens {output.tokens}"
        " --out-heads {output.heads} --out-summary {output.summary}"
        " --fig-dir {output.figures} --threads {threads} --job {params.job:q} > {log} 2>&1"
