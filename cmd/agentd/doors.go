package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/httpapi"
	"github.com/berth-deploy/berth/agent/sshd"
	"github.com/berth-deploy/berth/agent/token"
	"golang.org/x/crypto/ssh"
)

// door is one way in: the unix socket, the SSH server, the HTTP API.
type door struct {
	name     string
	addr     string // where it listens, for the status line
	serve    func(ctx context.Context) error
	shutdown func() error
}

// openDoors listens on every front door the config asks for. The unix
// socket is activated when systemd passed one (socket activation), else
// agentd creates it at socket.path. Nothing is served until serve is
// called; on error, whatever was opened is closed.
func openDoors(cfg *config.Config, svc *agent.Service, log *slog.Logger, activated net.Listener) (doors []door, err error) {
	defer func() {
		if err != nil {
			for _, d := range doors {
				d.shutdown()
			}
		}
	}()
	socket := &httpapi.Handler{Service: svc, Log: log,
		MaxBodyBytes: cfg.Socket.MaxBodyBytes, BodyTimeout: cfg.Socket.BodyTimeout, WriteTimeout: cfg.Socket.WriteTimeout}
	if cfg.SSH != nil {
		d, key, err := sshDoor(cfg.SSH, svc, log)
		if err != nil {
			return doors, err
		}
		doors = append(doors, d)
		socket.HostKey = key.PublicKey()
		_, port, _ := net.SplitHostPort(cfg.SSH.Listen)
		socket.SSHPort, _ = strconv.Atoi(port)
	}
	ln := activated
	if ln != nil {
		log.Info("serving on the socket systemd passed (socket activation); socket.path, socket.mode and socket.group are not used",
			"socket", ln.Addr().String(), "socket_path", cfg.Socket.Path)
	} else if ln, err = httpapi.ListenUnix(cfg.Socket.Path, cfg.Socket.ModeBits(), cfg.Socket.Group); err != nil {
		return doors, err
	}
	doors = append(doors, httpDoor("socket", ln, &http.Server{
		Handler:           socket,
		ConnContext:       httpapi.ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       cfg.Socket.IdleTimeout,
	}))
	if cfg.HTTP != nil {
		d, err := remoteDoor(cfg.HTTP, svc, log)
		if err != nil {
			return doors, err
		}
		doors = append(doors, d)
	}
	return doors, nil
}

// httpDoor serves an HTTP server on a listener; shutdown waits for the
// requests in flight.
func httpDoor(name string, ln net.Listener, srv *http.Server) door {
	return door{
		name: name,
		addr: ln.Addr().String(),
		serve: func(context.Context) error {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("%s: %w", name, err)
		},
		shutdown: func() error { return srv.Shutdown(context.Background()) },
	}
}

func remoteDoor(cfg *config.HTTP, svc *agent.Service, log *slog.Logger) (door, error) {
	verifier, err := token.New(cfg.OIDC, svc.Identities(), nil, nil, token.WithMaxNonces(cfg.MaxNonces), token.WithLog(log))
	if err != nil {
		return door{}, fmt.Errorf("http api: %w", err)
	}
	tcp, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return door{}, fmt.Errorf("http api: %w", err)
	}
	// The cap counts TCP connections, under TLS.
	limiter := httpapi.LimitConns(tcp, cfg.MaxConnections, log)
	var ln net.Listener = limiter
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			ln.Close()
			return door{}, fmt.Errorf("http api: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	log.Info("http api listening", "addr", ln.Addr().String(), "tls", cfg.TLSCert != "")
	// No global WriteTimeout: a deploy's stream lasts minutes; the
	// handler gives each write its own deadline instead.
	return httpDoor("http api", ln, &http.Server{
		Handler: &httpapi.Remote{
			Service:      svc,
			Verifier:     verifier,
			Forbidden:    func(err error) bool { return errors.Is(err, token.ErrForbidden) },
			Log:          log,
			MaxBodyBytes: cfg.MaxBodyBytes,
			BodyTimeout:  cfg.BodyTimeout,
			WriteTimeout: cfg.WriteTimeout,
		},
		ConnContext:       limiter.ConnContext,
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
	}), nil
}

func sshDoor(cfg *config.SSH, svc *agent.Service, log *slog.Logger) (door, ssh.Signer, error) {
	key, err := sshd.LoadOrCreateHostKey(cfg.HostKey)
	if err != nil {
		return door{}, nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return door{}, nil, fmt.Errorf("ssh: %w", err)
	}
	srv := &sshd.Server{Config: *cfg, Identities: svc.Identities(), Runner: svc, Signer: key, Log: log}
	log.Info("ssh listening", "addr", ln.Addr().String(), "host_key", sshd.KnownHostsLine(key.PublicKey(), "HOST", addrPort(ln.Addr())))
	sctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var done chan struct{} // closed when Serve returns; nil until it runs
	var serveErr error
	return door{
		name: "ssh",
		addr: ln.Addr().String(),
		serve: func(context.Context) error {
			mu.Lock()
			done = make(chan struct{})
			mu.Unlock()
			defer close(done)
			serveErr = srv.Serve(sctx, ln)
			return serveErr
		},
		shutdown: func() error {
			cancel()
			mu.Lock()
			d := done
			mu.Unlock()
			if d == nil {
				return ln.Close() // never served
			}
			<-d
			return serveErr
		},
	}, key, nil
}

func addrPort(a net.Addr) int {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.Port
	}
	return 0
}
