"""Pipeline stages of recsys-dvc; each module is one `dvc.yaml` stage with a `main()`."""
