# Per study: cells, history, summary, paired tests, memory summary, claims.


rule aggregate:
    input:
        results=study_results,
        claims=study_claims,
    output:
        [f"{RESULTS}/{{study}}/tables/{t}.csv" for t in TABLES],
    log:
        f"{RESULTS}/logs/aggregate/{{study}}.log",
    params:
        config=study_config_json,  # a function: braces in prose are not wildcards
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    conda:
        "../environment.yml"
    shell:
        "python -m bench aggregate --config-json {params.config:q} --study {wildcards.study} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"
