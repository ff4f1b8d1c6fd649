"""Code shared by several deploy units (training, predict, feedback, registry_watcher, redeploy).

Kept free of torch and mlflow so that every function bundle can carry it cheaply.
"""
