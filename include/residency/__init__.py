"""Data residency migration engine.

Plain Python: importable and testable without Airflow. Only
:mod:`residency.connections` imports Airflow, to turn Airflow connections
into SDK clients.
"""

__version__ = "0.1.0"
