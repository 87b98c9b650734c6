module spawner.dev/scripts/imagebuilder

go 1.26.0
