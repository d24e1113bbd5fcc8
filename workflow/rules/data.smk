C = pw.Common(CFG, "countdown_data")


rule countdown_data:
    output:
        expand(paths.countdown_data(R), split=CFG.tasks.countdown.splits),
    params:
        spec=pw.spec(CFG.tasks.countdown),
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline countdown-data --spec {params.spec:q} --out-dir {params.out_dir}"
        " --job {params.job:q} > {log} 2>&1"
