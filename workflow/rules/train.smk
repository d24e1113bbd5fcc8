C = pw.Common(CFG, "train", "{model}", "{method}", "seed{seed}")


rule train:
    input:
        unpack(lambda wc: pw.rl_inputs(CFG, R, wc.model, wc.method)),
    output:
        model=directory(paths.rl(R, "model")),
        history=paths.rl(R, "history"),
    params:
        spec=pw.spec(pw.rl_train_spec(CFG)),
        source=lambda wc: CFG.models[wc.model].source,
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
        boundary=lambda wc, input: f"--boundary {input.boundary}" if "boundary" in input.keys() else "",
        out_dir=lambda wc, output: os.path.dirname(output.history),
        job=C.job,
        launch=lambda wc, resources: pw.train_launcher(CFG, resources.get("gpu", 0)),
        mode=pw.train_mode(CFG),
        threads=lambda wc, threads, resources: pw.train_threads(
            CFG, threads, resources.get("gpu", 0)
        ),
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "{params.launch} train --name {wildcards.model} --method {wildcards.method:q}"
        " --seed {wildcards.seed} --model-dir {input.model} --spec {params.spec:q}"
        " {params.data} --source {params.source} {params.boundary}"
        " --out-dir {params.out_dir} --threads {params.threads} --job {params.job:q}"
        " --distributed {params.mode} > {log} 2>&1"
