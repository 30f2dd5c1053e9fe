"""The pipeline's settings: their one declaration, the Beam PipelineOptions built from it, the TOML config file."""
