# The clinician web UI. It talks to the model server over gRPC only and does
# not need TensorFlow at run time (serving.client loads the TF Serving protos
# without importing it), but the pinned constraints install the whole project.
FROM python:3.10-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -c /app/requirements.lock -e .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["koa", "web", "--host=0.0.0.0", "--port=8000"]
