# The benchmarks on a run: a base model (eval/<model>/...) or a trained checkpoint
# (eval/<model>/<method>/seed<s>/...; its sampling seed is its training seed).
C = pw.Common(CFG, "evaluate", "{run}", "{benchmark}", "seed{seed}")


rule evaluate:
    input:
        unpack(lambda wc: pw.evaluation_inputs(CFG, R, wc.run, wc.benchmark)),
    output:
        table=paths.evaluation(R, "table"),
        summary=paths.evaluation(R, "summary"),
    params:
        name=lambda wc: paths.run_name(wc.run),
        spec=lambda wc: pw.spec(CFG.evaluation.benchmarks[wc.benchmark]),
        source=lambda wc: pw.run_source(CFG, wc.run),
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline evaluate --name {params.name:q} --benchmark {wildcards.benchmark}"
        " --model-dir {input.model} --spec {params.spec:q} {params.data}"
        " --source {params.source} --seed {wildcards.seed} --out-table {output.table}"
        " --out-summary {output.summary} --threads {threads} --job {params.job:q} > {log} 2>&1"
