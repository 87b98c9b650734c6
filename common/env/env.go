// Package env reads flag defaults from environment variables, the one way
// every spawner process and test does. Stdlib only.
package env

import (
	"os"
	"strconv"
)

// Or is the variable's value, or def when it is unset or empty.
func Or(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Int is the variable's value as a positive integer, or def when it is unset,
// empty, not a number, or not above zero.
func Int(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
