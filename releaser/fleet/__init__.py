"""Fleet releases through S3-compatible object storage.

Only the fleet commands import this package's modules that need boto3, zstandard or
cryptography; `releaser publish` and the monitor never load them.
"""
