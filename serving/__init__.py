"""Model server speaking the TensorFlow Serving API, and its client.

``python -m serving`` runs the server (see :mod:`serving.__main__`);
:mod:`serving.client` is the client. Importing this package does no work and
does not import TensorFlow.
"""
