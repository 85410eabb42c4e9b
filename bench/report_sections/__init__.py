"""Study-specific report sections: one module per study, registered with
`bench.report.register_study_figures` / `register_study_tables`. Imported by bench.report."""

from bench.report_sections import (  # noqa: F401  (list every study module here)
    neuroflux,
    restwake,
    sparsity_regimes,
    tradyn,
)
