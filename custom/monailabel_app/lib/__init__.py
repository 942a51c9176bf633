"""The MONAI Label app's tasks for the fetal-ultrasound bundle (imported as ``lib`` by ``main.py``)."""
