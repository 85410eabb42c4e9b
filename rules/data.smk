# Each study's datasets are loaded once before its cells (checksums verified, downloaded where
# allowed), so a corrupted archive stops the workflow with one clear error before any training.


rule prepare_data:
    output:
        f"{RESULTS}/.prepared/{{study}}/{{dataset}}-{{spec}}.json",
    log:
        f"{RESULTS}/logs/prepare_data/{{study}}/{{dataset}}-{{spec}}.log",
    params:
        spec=dataset_spec_json,
    conda:
        "../environment.yml"
    shell:
        "python -m bench prepare-data --spec {params.spec:q} "
        "--dataset {wildcards.dataset:q} --out {output:q} > {log:q} 2>&1"
