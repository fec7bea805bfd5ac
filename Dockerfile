# The orchestrator on the official Airflow image of the pinned version.
# Build: docker build -t residency-orchestrator .
FROM apache/airflow:3.3.2-python3.11

# Airflow's images expect pip installs as the airflow user, with the image's
# own Airflow version held fixed so a requirement can never move it.
# requirements.txt pins the celery provider, Celery with its Redis transport and
# the Redis client to the versions `make demo EXECUTOR=celery` runs (the image's
# own may differ), so the one image serves the scheduler, the API server, the
# Celery workers (deploy/kubernetes/values.yaml) and KubernetesExecutor pods.
USER airflow
COPY --chown=airflow:root requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/requirements.txt

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
COPY --chown=airflow:root include/ /opt/airflow/include/

# The engine is imported as `residency` from include/.
ENV PYTHONPATH=/opt/airflow/include \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    RESIDENCY_POLICY=/opt/airflow/include/policies/example.yaml
