C = pw.Common(CFG, "report_summary")


rule report_summary:
    input:
        evals=pw.evaluation_targets(CFG, R) + pw.rl_evaluation_targets(CFG, R),
        provisions=expand(paths.provision_summary(R), model=MODELS),
    output:
        csv=paths.summary(R, "csv"),
        figure=report(
            paths.summary(R, "figure"),
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
    params:
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline summarize --evals {input.evals} --provisions {input.provisions}"
        " --out-csv {output.csv} --out-figure {output.figure} --job {params.job:q} > {log} 2>&1"
