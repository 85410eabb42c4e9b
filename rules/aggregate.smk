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
        report=[REPORT_HTML, REPORT_TEX],
    conda:
        "../environment.yml"
    # The report goes first: new tables are about to replace the old ones (Snakemake has
    # already removed them), so the old report no longer says what the tables say. A failed
    # aggregate thus leaves neither tables nor report, never one without the other.
    shell:
        "rm -f -- {params.report:q} && "
        "python -m bench aggregate --config-json {params.config:q} --study {wildcards.study:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"
