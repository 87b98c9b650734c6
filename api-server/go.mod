module spawner.dev/api-server

go 1.26.0
