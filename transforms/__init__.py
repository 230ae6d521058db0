"""Pure Polars transforms: no I/O, no Prefect."""
