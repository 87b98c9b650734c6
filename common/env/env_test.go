package env

import "testing"

func TestOrAndInt(t *testing.T) {
	t.Setenv("SPAWNER_ENV_TEST", "")
	if Or("SPAWNER_ENV_TEST", "d") != "d" || Int("SPAWNER_ENV_TEST", 7) != 7 {
		t.Error("an empty variable did not give the default")
	}
	t.Setenv("SPAWNER_ENV_TEST", "12")
	if Or("SPAWNER_ENV_TEST", "d") != "12" || Int("SPAWNER_ENV_TEST", 7) != 12 {
		t.Error("a set variable was not read")
	}
	for _, bad := range []string{"x", "0", "-3"} {
		t.Setenv("SPAWNER_ENV_TEST", bad)
		if Int("SPAWNER_ENV_TEST", 7) != 7 {
			t.Errorf("Int of %q did not give the default", bad)
		}
	}
}
