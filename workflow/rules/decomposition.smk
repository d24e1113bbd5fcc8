rule decomposition:
    input:
        model=f"{R}/models/{{model}}/model",
        responses=f"{R}/responses/{{model}}/responses.parquet",
    output:
        table=f"{R}/decomposition/{{model}}/entropies.parquet",
        summary=f"{R}/decomposition/{{model}}/summary.json",
        per_layer=f"{R}/decomposition/{{model}}/per_layer.csv",
        boundary=f"{R}/decomposition/{{model}}/boundary.json",
        figures=report(
            directory(f"{R}/decomposition/{{model}}/figures"),
            patterns=["{name}.png"],
            caption="../report/decomposition.rst",
            category="Decomposition",
            subcategory="{model}",
        ),
    params:
        spec=pw.spec(config["analysis"]["decomposition"]),
        job=lambda wc: pw.job(config, "decomposition", wc),
    threads: pw.threads(config, "decomposition")
    resources:
        **pw.resources(config, "decomposition"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/decomposition/{{model}}.log",
    shell:
        "python -m pipeline decomposition --name {wildcards.model} --model-dir {input.model}"
        " --responses {input.responses} --spec {params.spec:q} --out-table {output.table}"
        " --out-summary {output.summary} --out-boundary {output.boundary}"
        " --fig-dir {output.figures} --threads {threads} --job {params.job:q} > {log} 2>&1"


rule decomposition_compare:
    input:
        per_layer=expand(f"{R}/decomposition/{{model}}/per_layer.csv", model=ANALYSIS_MODELS),
    output:
        report(
            f"{R}/decomposition/compare_models.png",
            caption="../report/decomposition_compare.rst",
            category="Decomposition",
            subcategory="all models",
        ),
    params:
        names=ANALYSIS_MODELS,
        job=pw.job(config, "decomposition_compare"),
    threads: pw.threads(config, "decomposition_compare")
    resources:
        **pw.resources(config, "decomposition_compare"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/decomposition_compare.log",
    shell:
        "python -m pipeline decomposition-compare --summaries {input.per_layer}"
        " --names {params.names} --out-figure {output} --job {params.job:q} > {log} 2>&1"
