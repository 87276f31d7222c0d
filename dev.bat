@echo off
rem The guide's Windows entry point: `dev.bat start` runs the local stack on port 9000
rem (Docker on Windows cannot bind 8000 reliably). Every command runs an inv task:
rem   dev.bat start ^| stop ^| logs ^| shell ^| bash ^| migrate ^| superuser ^| test ^| ps
rem   dev.bat TASK [OPTIONS]   any other inv task, e.g. dev.bat healthcheck
setlocal
set "INV=inv"
if exist ".venv\Scripts\inv.exe" set "INV=.venv\Scripts\inv.exe"
set "CMD=%~1"
if "%CMD%"=="" goto usage
shift
set "REST="
:collect
if "%~1"=="" goto dispatch
set "REST=%REST% %1"
shift
goto collect
:dispatch
if /i "%CMD%"=="start" ( %INV% dev --port 9000%REST% & goto end )
if /i "%CMD%"=="stop" ( %INV% dev-down%REST% & goto end )
if /i "%CMD%"=="logs" ( %INV% dev-logs --follow%REST% & goto end )
if /i "%CMD%"=="shell" ( %INV% dev-shell%REST% & goto end )
if /i "%CMD%"=="bash" ( %INV% dev-bash%REST% & goto end )
%INV% %CMD%%REST%
goto end
:usage
echo usage: dev.bat start ^| stop ^| logs ^| shell ^| bash ^| TASK [OPTIONS]
echo   start   the local stack on http://localhost:9000 (inv dev --port 9000)
exit /b 2
:end
exit /b %ERRORLEVEL%
