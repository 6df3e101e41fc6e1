"""Celery worker: delivers runs to the trainer and wires its Recorder/Control to the store."""
