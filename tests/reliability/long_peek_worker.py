"""Imported by a worker started with ``LONG_PEEK`` (never by the test process: importing
``worker.celery_app`` builds an app and patches kombu for the whole process).

Its blocking peek waits a minute instead of the transport's 1 s. A test that demotes the
primary under the peek needs the peek still blocked there when the Sentinels have named the
new primary: with a 1 s peek, a failover that takes longer (a loaded machine) sees the peek
sent again to the old primary, refused NOREPLICAS once its replicas left, and moved away
before the demotion it is meant to meet."""

from __future__ import annotations

from worker.celery_app import celery_app

celery_app.conf.broker_transport_options = {
    **celery_app.conf.broker_transport_options,
    "wait_timeout": 60,
}
