# reasoning-inside: one DAG from model provisioning to the report.
# Usage: snakemake --cores all [--configfile config/smoke.yaml]   (see README)
from pipeline.settings import Config
from pipeline.validation import check_config_files, validate
from pipeline.workflow import export_env

from snakemake.utils import min_version

min_version("9.0")


# The config comes from the profile (profiles/default: config/config.yaml) or from
# --configfile, which replaces it; no `configfile:` here, since Snakemake would merge the
# two and mix the default's models into every other experiment.
if not config:
    raise ValueError("no config: pass --configfile config/<experiment>.yaml")
if workflow.is_main_process:
    # Snakemake's YAML reader keeps the last of two duplicate keys silently: read the files
    # again, strictly (a syntax error never gets here: Snakemake stops on it first, see
    # `reasoning-inside check-config`, which names the file, line and column)
    check_config_files(workflow.overwrite_configfiles)
# fills defaults; a bad key stops here with its key path (cross-key checks only in the
# main process: a cluster job's own Snakemake skips them, the main process checked them)
validate(config, semantics=workflow.is_main_process)
CFG = Config.of(config)  # the typed tree (pipeline.settings) the rules read
export_env(CFG)  # tracking URI, MLflow experiment, config hash for every job
# planner.gpu_mem_gb set: stop before any job starts when a GPU job's estimated peak
# memory per GPU exceeds it (pipeline.memory_plan; `reasoning-inside plan` prints the table)
if workflow.is_main_process:
    from pipeline.config import check_writable
    from pipeline.memory_plan import check_memory

    check_writable(CFG.results_dir)

    check_memory(CFG)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/responses.smk"
include: "workflow/rules/decomposition.smk"
include: "workflow/rules/attention.smk"
include: "workflow/rules/depth.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/claims.smk"


report: "workflow/report/workflow.rst"  # `snakemake --report report.html` (README)


rule all:
    default_target: True
    input:
        rules.report_summary.output,
        expand(paths.analysis(R, "decomposition"), run=ANALYSIS_MODELS),
        rules.decomposition_compare.output,
        expand(paths.analysis(R, "attention"), run=ANALYSIS_MODELS),
        expand(paths.depth(R), model=ANALYSIS_MODELS),
        rules.compare.output,
        rules.claims.output.csv,
