# Every paper claim as a verdict with an interval (docs/methods.md §9): one table from the
# stage and comparison outputs, its forest figure and an HTML page for the report.
C = pw.Common(CFG, "claims")


rule claims:
    input:
        **pw.claims_inputs(CFG, R),
    output:
        csv=paths.claims(R, "csv"),
        parquet=paths.claims(R, "parquet"),
        figure=report(
            paths.claims(R, "figure"),
            caption="../report/claims_figure.rst",
            category="Claims",
        ),
        html=report(
            paths.claims(R, "html"),
            caption="../report/claims_table.rst",
            category="Claims",
        ),
    params:
        root=lambda wc, output: paths.claims_root(output.csv),
        models=ANALYSIS_MODELS,
        runs=pw.claims_runs(CFG),
        families=pw.claims_families(CFG),
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline claims --root {params.root} --models {params.models} --runs {params.runs}"
        " --families {params.families}"
        " --out-csv {output.csv} --out-parquet {output.parquet} --out-figure {output.figure}"
        " --out-html {output.html} --job {params.job:q} > {log} 2>&1"
