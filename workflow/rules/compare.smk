# Comparison over models × methods × seeds, and the analyses before/after RL: the
# decomposition and attention stages rerun on each trained checkpoint over the BASE
# model's responses (same text, trained weights), so no new sampling is needed.


rule decomposition_trained:
    input:
        model=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/model",
        responses=f"{R}/responses/{{model}}/responses.parquet",
    output:
        table=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/decomposition/entropies.parquet",
        summary=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/decomposition/summary.json",
        per_layer=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/decomposition/per_layer.csv",
        boundary=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/decomposition/boundary.json",
        figures=directory(f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/decomposition/figures"),
    params:
        spec=pw.spec(config["analysis"]["decomposition"]),
        job=lambda wc: pw.job(config, "decomposition_trained", wc),
    threads: pw.threads(config, "decomposition_trained")
    resources:
        **pw.resources(config, "decomposition_trained"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/decomposition_trained/{{model}}-{{method}}-seed{{seed}}.log",
    shell:
        "python -m pipeline decomposition --name {wildcards.model}+{wildcards.method:q}"
        " --model-dir {input.model} --responses {input.responses} --spec {params.spec:q}"
        " --out-table {output.table} --out-summary {output.summary}"
        " --out-boundary {output.boundary} --fig-dir {output.figures} --threads {threads}"
        " --job {params.job:q} > {log} 2>&1"


rule attention_trained:
    input:
        model=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/model",
        responses=f"{R}/responses/{{model}}/responses.parquet",
    output:
        tokens=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/attention/tokens.parquet",
        heads=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/attention/heads.parquet",
        summary=f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/attention/summary.json",
        figures=directory(f"{R}/rl/{{model}}/{{method}}/seed{{seed}}/attention/figures"),
    params:
        spec=pw.spec(config["analysis"]["attention"]),
        job=lambda wc: pw.job(config, "attention_trained", wc),
    threads: pw.threads(config, "attention_trained")
    resources:
        **pw.resources(config, "attention_trained"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/attention_trained/{{model}}-{{method}}-seed{{seed}}.log",
    shell:
        "python -m pipeline attention --name {wildcards.model}+{wildcards.method:q}"
        " --model-dir {input.model} --responses {input.responses} --spec {params.spec:q}"
        " --out-tokens {output.tokens} --out-heads {output.heads}"
        " --out-summary {output.summary} --fig-dir {output.figures} --threads {threads}"
        " --job {params.job:q} > {log} 2>&1"


rule compare:
    input:
        **pw.compare_inputs(config, R),
    output:
        evaluations=report(
            f"{R}/compare/evaluations.csv",
            caption="../report/compare_evaluations.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        comparison=report(
            f"{R}/compare/comparison.csv",
            caption="../report/compare_table.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        differences=report(
            f"{R}/compare/differences.csv",
            caption="../report/compare_differences.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        pass_at_k=f"{R}/compare/pass_at_k.csv",
        training=f"{R}/compare/training.csv",
        before_after=report(
            f"{R}/compare/before_after.csv",
            caption="../report/compare_before_after_table.rst",
            category="Before/after RL",
        ),
        tables=report(
            f"{R}/compare/tables.html",
            caption="../report/compare_tables.rst",
            category="Comparison",
            subcategory="Tables",
        ),
        accuracy=report(
            f"{R}/compare/figures/accuracy.png",
            caption="../report/compare_accuracy.rst",
            category="Comparison",
            subcategory="Accuracy",
        ),
        pass_at_k_figure=report(
            f"{R}/compare/figures/pass_at_k.png",
            caption="../report/compare_pass_at_k.rst",
            category="Comparison",
            subcategory="Accuracy",
        ),
        training_figure=report(
            f"{R}/compare/figures/training_curves.png",
            caption="../report/compare_training.rst",
            category="Training",
        ),
        entropy_figure=report(
            f"{R}/compare/figures/entropy_per_layer.png",
            caption="../report/compare_entropy.rst",
            category="Before/after RL",
        ),
        attention_figure=report(
            f"{R}/compare/figures/attention_before_after.png",
            caption="../report/compare_attention.rst",
            category="Before/after RL",
        ),
        summary=f"{R}/compare/summary.json",
    params:
        spec=pw.spec(pw.compare_spec(config)),
        root=lambda wc, output: os.path.dirname(os.path.dirname(output.summary)),
        out_dir=lambda wc, output: os.path.dirname(output.summary),
        job=pw.job(config, "compare"),
    threads: pw.threads(config, "compare")
    resources:
        **pw.resources(config, "compare"),
    conda:
        "../envs/pipeline.yaml"
    log:
        f"{R}/logs/compare.log",
    shell:
        "python -m pipeline compare --root {params.root} --spec {params.spec:q}"
        " --out-dir {params.out_dir} --job {params.job:q} > {log} 2>&1"
