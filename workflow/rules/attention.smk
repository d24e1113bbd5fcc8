# Attention rhythm of a run: a base model, or a trained checkpoint on its BASE model's
# responses (same text, trained weights: the before/after of the comparison).
C = pw.Common(CFG, "attention", "{run}")


rule attention:
    input:
        unpack(lambda wc: pw.analysis_inputs(R, wc.run)),
    output:
        tokens=paths.analysis(R, "attention", "tokens"),
        heads=paths.analysis(R, "attention", "heads"),
        summary=paths.analysis(R, "attention", "summary"),
        figures=report(
            directory(paths.analysis(R, "attention", "figures")),
            patterns=["{name}.png"],
            caption="../report/attention.rst",
            category="Attention",
            subcategory="{run}",
        ),
    params:
        name=lambda wc: paths.run_name(wc.run),
        spec=pw.spec(CFG.analysis.attention),
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline attention --name {params.name:q} --model-dir {input.model}"
        " --responses {input.responses} --spec {params.spec:q} --out-tokens {output.tokens}"
        " --out-heads {output.heads} --out-summary {output.summary}"
        " --fig-dir {output.figures} --threads {threads} --job {params.job:q} > {log} 2>&1"
