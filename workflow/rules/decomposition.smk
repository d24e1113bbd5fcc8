rule decomposition:
    input:
        model=f"{R}/models/{{model}}/model",
        responses=f"{R}/responses/{{model}}/responses.parquet",
    output:
        table=f"{R}/decomposition/{{model}}/entropies.parquet",
        summary=f"{R}/decomposition/{{model}}/summary.json",
        per_layer=f"{R}/decomposition/{{model}}/per_layer.csv",
        boundary=f"{R}/decomposition/{{model}}/boundary.json",
        figures=directory(f"{R}/decomposition/{{model}}/figures"),
    params:
        spec=pw.spec(config["analysis"]["decomposition"]),
        job=lambda wc: pw.job(config, "decomposition", wc),
    threads: 2
    resources:
        mem_mb=6000,
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
        f"{R}/decomposition/compare_models.png",
    params:
        names=ANALYSIS_MODELS,
        job=pw.job(config, "decomposition_compare"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/decomposition_compare.log",
    shell:
        "python -m pipeline decomposition-compare --summaries {input.per_layer}"
        " --names {params.names} --out-figure {output} --job {params.job:q} > {log} 2>&1"
