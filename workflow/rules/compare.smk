# Comparison over models × methods × seeds and the analyses before/after RL: the
# evaluations, histories and analyses of every run (pipeline.comparison.manifest); the
# trained checkpoints' analyses are the decomposition and attention rules on their runs.
C = pw.Common(CFG, "compare")


rule compare:
    input:
        **pw.compare_inputs(CFG, R),
    output:
        evaluations=report(
            paths.compare(R, "evaluations"),
            caption="../report/compare_evaluations.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        comparison=report(
            paths.compare(R, "comparison"),
            caption="../report/compare_table.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        differences=report(
            paths.compare(R, "differences"),
            caption="../report/compare_differences.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        pass_at_k=paths.compare(R, "pass_at_k"),
        training=paths.compare(R, "training"),
        before_after=report(
            paths.compare(R, "before_after"),
            caption="../report/compare_before_after_table.rst",
            category="Before/after RL",
        ),
        tables=report(
            paths.compare(R, "tables"),
            caption="../report/compare_tables.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        accuracy_fig=report(
            paths.compare(R, "accuracy_fig"),
            caption="../report/compare_accuracy.rst",
            category="Comparison",
            subcategory="Accuracy",
        ),
        pass_at_k_fig=report(
            paths.compare(R, "pass_at_k_fig"),
            caption="../report/compare_pass_at_k.rst",
            category="Comparison",
            subcategory="Accuracy",
        ),
        training_fig=report(
            paths.compare(R, "training_fig"),
            caption="../report/compare_training.rst",
            category="Training",
        ),
        entropy_fig=report(
            paths.compare(R, "entropy_fig"),
            caption="../report/compare_entropy.rst",
            category="Before/after RL",
        ),
        attention_fig=report(
            paths.compare(R, "attention_fig"),
            caption="../report/compare_attention.rst",
            category="Before/after RL",
        ),
        summary=paths.compare(R, "summary"),
    params:
        spec=pw.spec(pw.compare_spec(CFG)),
        root=lambda wc, output: paths.compare_dirs(output.summary)[0],
        out_dir=lambda wc, output: paths.compare_dirs(output.summary)[1],
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline compare --root {params.root} --spec {params.spec:q}"
        " --out-dir {params.out_dir} --job {params.job:q} > {log} 2>&1"
