# One HTML page (figures embedded) and one LaTeX document (PDF figures) for every study.


rule report:
    input:
        [f"{RESULTS}/{study}/tables/{t}.csv" for study in STUDIES for t in TABLES],
    output:
        html=REPORT_HTML,
        tex=REPORT_TEX,
    log:
        f"{RESULTS}/logs/report.log",
    params:
        config=lambda wildcards: CONFIG_JSON,  # a function: braces in prose are not wildcards
        out_dir=lambda wildcards, output: os.path.dirname(output.html),
    conda:
        "../environment.yml"
    shell:
        "python -m bench report --config-json {params.config:q} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"
