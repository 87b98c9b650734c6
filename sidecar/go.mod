module spawner.dev/sidecar

go 1.26.0
