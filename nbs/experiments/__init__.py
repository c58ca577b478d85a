"""The papermill templates (ablation.ipynb, report.ipynb, demo_report.ipynb), installed as `patchddm.templates`.

This folder is their only source: pyproject.toml maps the package `patchddm.templates` onto it, so a wheel carries
the notebooks and an editable install reads them from here (see `patchddm.demo.template_path`).
"""
