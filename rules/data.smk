# Datasets are loaded (checksums verified, downloaded where allowed) once before the fan-out,
# and the MLflow store is created once: MLflow's schema migration races when several cells
# open a brand-new sqlite file together.


rule prepare_data:
    output:
        f"{RESULTS}/.prepared/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    params:
        config=CONFIG_JSON,
    conda:
        "../environment.yml"
    shell:
        "python -m bench prepare-data --config-json {params.config:q} "
        "--dataset {wildcards.dataset} --out {output:q} > {log:q} 2>&1"


rule init_tracking:
    output:
        f"{RESULTS}/.tracking.json",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    params:
        config=CONFIG_JSON,
        uri=TRACKING_URI,
    conda:
        "../environment.yml"
    shell:
        "python -m bench init-tracking --config-json {params.config:q} "
        "--tracking-uri {params.uri:q} --out {output:q} > {log:q} 2>&1"
