"""Stand-in for ansible-test's get-pip bootstrap script.

ansible-test downloads get-pip-<version>.py from a host this machine cannot reach. This
script does the same job from what is reachable: bootstrap pip into the running (empty)
virtualenv with the standard library's ensurepip, then let that pip install the requested
version (pip==X) and packages from the package index. It accepts get-pip's extra flags.
"""
import subprocess
import sys

GET_PIP_ONLY = {'--no-setuptools', '--no-wheel'}


def main():
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'],
                          stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + args)


if __name__ == '__main__':
    main()
