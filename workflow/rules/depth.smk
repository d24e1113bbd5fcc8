# Depth analysis of a base model (docs/methods.md §4). Next to summary.json the stage writes one
# <table>.parquet per table, figures/<name>.png and, with the tuned lens, tuned_lens/.
# Which tables and figures depends on analysis.depth and on the model's text: builtin-task
# text (token classes) or natural text (facts, MCQ, POS) — pipeline.depth.spec lists them.
# So one job, two rules: `depth` for natural-text models, `depth_builtin` for the others.
from pipeline.depth import spec as depth_spec

DEPTH_SPEC = depth_spec.resolve_spec(CFG.analysis.depth)
DEPTH_DIR = os.path.dirname(paths.depth(R))
# builtin-task text → the models of that rule ("(?!)", matching nothing, when none)
DEPTH_BUILTIN = {
    m: depth_spec.expects_builtin_text(DEPTH_SPEC, CFG.models[m]) for m in MODELS
}
DEPTH_MODELS = {
    b: pw.alternatives([m for m in MODELS if DEPTH_BUILTIN[m] == b]) or "(?!)"
    for b in (False, True)
}
# builtin-task text → every table, the tuned lens and every figure (a report item)
DEPTH_OUTPUTS = {
    builtin: {
        **{
            name: f"{DEPTH_DIR}/{name}.parquet"
            for name in depth_spec.output_tables(DEPTH_SPEC, builtin=builtin)
        },
        **(
            {"tuned_lens": directory(f"{DEPTH_DIR}/tuned_lens")}
            if "tuned" in DEPTH_SPEC["lenses"]
            else {}
        ),
        **{
            f"fig_{fname.removesuffix('.png')}": report(
                f"{DEPTH_DIR}/figures/{fname}",
                caption=f"../report/depth_{fname.removesuffix('.png')}.rst",
                category="Depth",
                subcategory="{model}",
            )
            for fname in depth_spec.output_figures(DEPTH_SPEC, builtin=builtin)
        },
    }
    for builtin in (False, True)
}


C = pw.Common(CFG, "depth", "{model}")


rule depth:
    input:
        model=paths.model_dir(R),
    output:
        summary=paths.depth(R),
        **DEPTH_OUTPUTS[False],
    wildcard_constraints:
        model=DEPTH_MODELS[False],
    params:
        # the text kind is decided here, once, from the model's source (the stage's own
        # tokenizer-size guess applies only to direct calls without builtin_text)
        spec=lambda wc: pw.spec(
            {**CFG.analysis.depth, "builtin_text": DEPTH_BUILTIN[wc.model]}
        ),
        countdown=lambda wc: pw.spec(CFG.tasks.countdown)
        if DEPTH_BUILTIN[wc.model]
        else "null",
        out_dir=lambda wc, output: os.path.dirname(output.summary),
        job=C.job,
    threads: C.threads
    resources:
        **C.resources,
    log:
        C.log,
    conda:
        C.conda
    shell:
        "python -m pipeline depth --name {wildcards.model} --model-dir {input.model}"
        " --spec {params.spec:q} --countdown {params.countdown:q} --out-dir {params.out_dir}"
        " --threads {threads} --job {params.job:q} > {log} 2>&1"


# The same job on builtin-task text; its MLflow job keeps the rule name "depth".
use rule depth as depth_builtin with:
    output:
        summary=paths.depth(R),
        **DEPTH_OUTPUTS[True],
    wildcard_constraints:
        model=DEPTH_MODELS[True],
