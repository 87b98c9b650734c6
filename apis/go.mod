module spawner.dev/apis

go 1.26.0
