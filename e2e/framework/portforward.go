package framework

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"
)

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`)

// portForward makes a Service's port reachable on a local address for the
// rest of the test binary's life, as `kubectl port-forward svc/...` does, but
// one that survives the pod behind it. kubectl forwards to one pod it picks
// when it starts and exits when that pod dies (the restart and node-loss
// tests kill replicas of spawner-api), after which every connection is
// refused. So the address is a small local proxy: each connection goes to the
// current kubectl, which is started again, to a live pod, when it has ended
// or refuses.
func portForward(service string, port int32) (string, error) {
	f := &forwarder{service: service, port: port}
	if _, err := f.target(); err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return l.Addr().String(), nil
}

type forwarder struct {
	service string
	port    int32

	mu   sync.Mutex
	cmd  *exec.Cmd
	addr string
	done chan struct{} // closed when cmd has exited
}

// target returns the address of a running kubectl port-forward, starting one
// when there is none.
func (f *forwarder) target() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done != nil {
		select {
		case <-f.done:
		default:
			return f.addr, nil
		}
	}
	cmd := exec.Command("kubectl", "-n", SystemNamespace, "port-forward", "svc/"+f.service, fmt.Sprintf("0:%d", f.port))
	// Nothing else ends it when the test binary ends: have the kernel kill
	// it with its parent (one outlived a multi-node run here, reparented to init).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan struct{})
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if m := forwarding.FindStringSubmatch(lines.Text()); m != nil {
			go func() {
				io.Copy(io.Discard, out)
				cmd.Wait()
				close(done)
			}()
			f.cmd, f.addr, f.done = cmd, "127.0.0.1:"+m[1], done
			return f.addr, nil
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	return "", fmt.Errorf("kubectl port-forward svc/%s ended without forwarding", f.service)
}

// restart ends the current kubectl if it is still the one at addr.
func (f *forwarder) restart(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addr == addr && f.cmd != nil {
		f.cmd.Process.Kill()
		<-f.done
	}
}

// serve connects c to the Service through kubectl, retrying for up to 30 s
// while kubectl is (re)started.
func (f *forwarder) serve(c net.Conn) {
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		addr, err := f.target()
		if err == nil {
			up, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err == nil {
				defer up.Close()
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, up)
				return
			}
			f.restart(addr)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}
