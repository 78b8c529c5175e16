"""KOA grading: TFX pipeline, model server and clinician web UI."""

from setuptools import find_packages, setup

setup(
    name="koa-grading",
    version="0.1.0",
    description="Knee osteoarthritis KL grading: TFX pipeline, TF Serving API server, web UI",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["components*", "koa*", "pipeline*", "serving*", "webapp*"]),
    include_package_data=True,
    package_data={"pipeline": ["*.pbtxt"], "webapp": ["templates/**/*", "static/**/*", "migrations/**/*"]},
    entry_points={"console_scripts": ["koa=koa.cli:main"]},
)
