# Decomposition of a run: a base model, or a trained checkpoint on its BASE model's
# responses (same text, trained weights: the before/after of the comparison).
C = pw.Common(CFG, "decomposition", "{run}")


rule decomposition:
    input:
        unpack(lambda wc: pw.analysis_inputs(R, wc.run)),
    output:
        table=paths.analysis(R, "decomposition", "table"),
        summary=paths.analysis(R, "decomposition", "summary"),
        per_layer=paths.analysis(R, "decomposition", "per_layer"),
        boundary=paths.analysis(R, "decomposition", "boundary"),
        figures=report(
            directory(paths.analysis(R, "decomposition", "figures")),
            patterns=["{name}.png"],
            caption="../report/decomposition.rst",
            category="Decomposition",
            subcategory="{run}",
        ),
    params:
        name=lambda wc: paths.run_name(wc.run),
        spec=pw.spec(CFG.analysis.decomposition),
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline decomposition --name {params.name:q} --model-dir {input.model}"
        " --responses {input.responses} --spec {params.spec:q} --out-table {output.table}"
        " --out-summary {output.summary} --out-boundary {output.boundary}"
        " --fig-dir {output.figures} --threads {threads} --job {params.job:q} > {log} 2>&1"


C = pw.Common(CFG, "decomposition_compare")


rule decomposition_compare:
    input:
        per_layer=expand(paths.analysis(R, "decomposition", "per_layer"), run=ANALYSIS_MODELS),
    output:
        report(
            paths.decomposition_compare(R),
            caption="../report/decomposition_compare.rst",
            category="Decomposition",
            subcategory="all models",
        ),
    params:
        names=ANALYSIS_MODELS,
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline decomposition-compare --summaries {input.per_layer}"
        " --names {params.names} --out-figure {output} --job {params.job:q} > {log} 2>&1"
