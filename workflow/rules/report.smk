rule report_summary:
    input:
        evals=pw.evaluation_targets(config, R) + pw.rl_evaluation_targets(config, R),
        provisions=expand(f"{R}/models/{{model}}/provision.json", model=MODELS),
    output:
        csv=f"{R}/summary/evaluation.csv",
        figure=report(
            f"{R}/summary/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
    params:
        job=pw.job(config, "report_summary"),
    threads: pw.threads(config, "report_summary")
    resources:
        **pw.resources(config, "report_summary"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/report_summary.log",
    shell:
        "python -m pipeline summarize --evals {input.evals} --provisions {input.provisions}"
        " --out-csv {output.csv} --out-figure {output.figure} --job {params.job:q} > {log} 2>&1"
